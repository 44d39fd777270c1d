"""The text files of an exported MONAI bundle: README, licence, logging config, offline metadata schema.

Kept apart from ``organseg.bundle`` (which builds the pipeline and the network) because these are
documents, not logic. ``bundle_readme`` takes the metadata ``organseg.bundle.metadata`` produced.
"""

from __future__ import annotations

from pathlib import Path

from organseg.config import Config

#: The schema MONAI's model zoo bundles name (fetched by ``verify_metadata`` when online).
MONAI_SCHEMA_URL = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json"
)


def metadata_schema() -> dict:
    """A JSON schema (draft-07) of the MONAI Bundle Specification's mandatory ``metadata.json`` keys.

    Transcribed from the specification's text (docs.monai.io, "MONAI Bundle Specification": mandatory keys
    and tensor format specifiers), for an offline ``verify_metadata``; it is not MONAI's own schema file.
    """
    tensor = {
        "type": "object",
        "required": [
            "type",
            "format",
            "num_channels",
            "spatial_shape",
            "dtype",
            "value_range",
            "is_patch_data",
            "channel_def",
        ],
        "properties": {
            "type": {"type": "string"},
            "format": {"type": "string"},
            "modality": {"type": "string"},
            "num_channels": {"type": "integer", "minimum": 1},
            "spatial_shape": {"type": "array", "items": {"type": ["integer", "string"]}},
            "dtype": {"type": "string"},
            "value_range": {"type": "array", "items": {"type": "number"}},
            "is_patch_data": {"type": "boolean"},
            "channel_def": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }
    versions = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "MONAI bundle metadata (mandatory keys of the MONAI Bundle Specification; organseg transcription)",
        "type": "object",
        "required": [
            "version",
            "monai_version",
            "pytorch_version",
            "numpy_version",
            "task",
            "description",
            "authors",
            "copyright",
            "network_data_format",
        ],  # fmt: skip
        # the specification's optional_packages_version, renamed required_packages_version in MONAI 1.2
        "anyOf": [{"required": ["optional_packages_version"]}, {"required": ["required_packages_version"]}],
        "properties": {
            "schema": {"type": "string"},
            "version": {"type": "string"},
            "changelog": versions,
            "monai_version": {"type": "string"},
            "pytorch_version": {"type": "string"},
            "numpy_version": {"type": "string"},
            "optional_packages_version": versions,
            "required_packages_version": versions,
            "task": {"type": "string"},
            "description": {"type": "string"},
            "authors": {"type": "string"},
            "copyright": {"type": "string"},
            "network_data_format": {
                "type": "object",
                "required": ["inputs", "outputs"],
                "properties": {
                    "inputs": {"type": "object", "minProperties": 1, "additionalProperties": tensor},
                    "outputs": {"type": "object", "minProperties": 1, "additionalProperties": tensor},
                },
            },
        },
    }


def bundle_readme(cfg: Config, model_file: Path, meta: dict) -> str:
    p = cfg.preprocess
    return f"""# {meta["name"]}: MONAI bundle exported by organseg {meta["version"]}

{meta["task"]}. Model: `{model_file.name}` (task `{cfg.task}`). Training data: {meta["data_source"]}.
{meta["intended_use"]}

## Run it (MONAI only; organseg is not needed)

    pip install "monai[nibabel,fire,scipy,skimage]"
    python -m monai.bundle run --config_file BUNDLE/configs/inference.json \\
        --dataset_dir DIR_WITH_NIFTI_CTS --output_dir OUT

Every `*.nii.gz` / `*.nii` CT (Hounsfield units) in `--dataset_dir` gives `OUT/<name>_seg.nii.gz`: uint8 label
ids {meta["label_classes"]}, on the input's own grid (shape and affine). `configs/inference.json` holds the
bundle's absolute path (`bundle_root`); after moving the folder add `--bundle_root NEW_PATH`.
GPU: used when torch sees one.

## Pipeline (MONAI components)

Reorient to {p.orientation}, resample to {"x".join(f"{s:g}" for s in p.spacing_mm)} mm (bilinear), crop to the body
(HU > {p.body_threshold_hu:g}, margin {p.margin_mm:g} mm), HU window {p.hu_window[0]:g}..{p.hu_window[1]:g}
({p.normalization}), sliding window {"x".join(map(str, cfg.infer_patch_size))} (overlap {cfg.infer.overlap:g},
{cfg.infer.blend} blending), softmax, `Invertd` back onto the input grid, argmax, largest connected component and
hole filling per organ, `SaveImaged`. The network is TorchScript (`models/model.ts`, traced at the patch
size); there is no `model.pt` state dict, because instantiating one would need organseg's network class.
organseg's own `organseg infer` blends probabilities rather than logits and resamples slab by slab, so a
few boundary voxels can differ. Two of its postprocessing steps have no MONAI component and are not in the
bundle: it keeps organs inside the trunk (an arm beside the chest cannot hold one) and drops an organ whose
whole mask is under 1 ml; on a scan without arms in view the masks are the same.

## Check the metadata offline

    pip install jsonschema
    python -m monai.bundle verify_metadata --meta_file BUNDLE/configs/metadata.json \\
        --filepath BUNDLE/docs/metadata_schema.json

`docs/metadata_schema.json` is organseg's transcription of the mandatory keys of the MONAI Bundle
Specification, not MONAI's own schema file. With network access, point `--filepath` at a new file name and
`verify_metadata` downloads the schema named in `metadata.json` (`{MONAI_SCHEMA_URL}`) instead.
"""


LICENSE_TEXT = """This bundle (network weights, configs and documentation) was exported by organseg.

Licensed under the Apache License, Version 2.0 (the "License"); you may not use these files except in
compliance with the License. You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License is
distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and limitations under the License.

Weights trained on data with its own terms (for example the TotalSegmentator dataset, CC BY 4.0) carry
those terms too: cite the data as its licence asks. The built-in organseg model was trained only on
synthetic images.
"""


#: MONAI's bundle runner reads configs/logging.conf (Python logging.config.fileConfig format).
LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""
