"""The plain MONAI path as a peer: the recipe of MONAI's 3D segmentation tutorials, nothing of organseg's.

Training (``train``): ``LoadImaged -> EnsureChannelFirstd -> Orientationd(RAS) -> Spacingd(3 mm) ->
ScaleIntensityRanged(-175..250 HU -> 0..1, clipped) -> CropForegroundd`` cached in memory
(``CacheDataset``), then ``RandCropByPosNegLabeld`` (one 64^3 patch per case, half centred on an organ) with
``SpatialPadd``; a batch holds 2 cases, as organseg's demo. MONAI's ``UNet`` as in the spleen tutorial
(16-32-64-128-256 channels, strides 2, 2 residual units, batch norm), ``DiceCELoss`` (softmax, one-hot
labels), Adam at ``--lr`` (1e-3: the tutorials' 1e-4 is meant for hours on a GPU). It trains until
``--budget-s`` seconds after the process started (no step starts that would end later; no validation during
training) and saves the last weights (state dict, loaded back with ``weights_only=True``) and
``train.json`` (steps, seconds per step, parameters).

Inference (``infer``): the same deterministic transforms, ``sliding_window_inference`` (64^3, overlap 0.25,
Gaussian blending), then ``Invertd`` back to the input grid, argmax, ``SaveImage``; masks carry the
input's affine and shape.

Usage::

    python benchmarks/peers/monai_plain.py train --data DIR --cases a,b,... --out DIR --budget-s 600
    python benchmarks/peers/monai_plain.py infer --weights W --input CT --output MASK
"""

from __future__ import annotations

import time

START = time.time()  # the budget counts from process start, imports included, as for the other peers

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from monai import transforms as T  # noqa: E402
from monai.data import CacheDataset, DataLoader, Dataset, decollate_batch  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.losses import DiceCELoss  # noqa: E402
from monai.networks.layers import Norm  # noqa: E402
from monai.networks.nets import UNet  # noqa: E402

PATCH = (64, 64, 64)
CLASSES = 5  # background, liver, kidney_right, kidney_left, spleen (organseg's ids)


def base_transforms(keys: list[str]) -> list:
    modes = ["bilinear", "nearest"][: len(keys)]
    return [
        T.LoadImaged(keys=keys),
        T.EnsureChannelFirstd(keys=keys),
        T.Orientationd(keys=keys, axcodes="RAS"),
        T.Spacingd(keys=keys, pixdim=(3.0, 3.0, 3.0), mode=modes),
        T.ScaleIntensityRanged(keys="image", a_min=-175, a_max=250, b_min=0.0, b_max=1.0, clip=True),
        T.CropForegroundd(keys=keys, source_key="image", allow_smaller=True),
    ]


def build_net() -> UNet:
    return UNet(
        spatial_dims=3, in_channels=1, out_channels=CLASSES, channels=(16, 32, 64, 128, 256),
        strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.BATCH,
    )  # fmt: skip


def train(data: Path, cases: list[str], out: Path, budget_s: float, lr: float, seed: int) -> None:
    torch.manual_seed(seed)
    files = [
        {"image": str(data / "imagesTr" / f"{c}.nii.gz"), "label": str(data / "labelsTr" / f"{c}.nii.gz")}
        for c in cases
    ]
    keys = ["image", "label"]
    random = [
        T.SpatialPadd(keys=keys, spatial_size=PATCH),
        T.RandCropByPosNegLabeld(
            keys=keys, label_key="label", spatial_size=PATCH, pos=1, neg=1, num_samples=1, image_key="image"
        ),
    ]
    cached = CacheDataset(files, T.Compose(base_transforms(keys)), cache_rate=1.0, num_workers=0)
    ds = Dataset(cached, T.Compose(random))  # random crops on top of the cached, preprocessed volumes
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=0, drop_last=True)
    net = build_net()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    deadline = START + budget_s
    steps, times, losses, done = 0, [], [], False
    net.train()
    while not done:
        for batch in loader:
            if times and time.time() + sorted(times)[len(times) // 2] > deadline:
                done = True
                break
            t = time.time()
            opt.zero_grad()
            loss = loss_fn(net(batch["image"]), batch["label"])
            loss.backward()
            opt.step()
            times.append(time.time() - t)
            losses.append(float(loss))
            steps += 1
    out.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), out / "weights.pt")
    info = {
        "steps": steps,
        "s_per_step": sorted(times)[len(times) // 2],
        "last_loss": sum(losses[-10:]) / len(losses[-10:]),
        "parameters": sum(p.numel() for p in net.parameters()),
        "train_cases": len(cases),
    }
    (out / "train.json").write_text(json.dumps(info, indent=1), encoding="utf-8")


def infer(weights: Path, image: Path, output: Path) -> None:
    net = build_net()
    net.load_state_dict(torch.load(weights, weights_only=True))
    net.eval()
    pre = T.Compose(base_transforms(["image"]))
    post = T.Compose(
        [
            T.Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            T.AsDiscreted(keys="pred", argmax=True),
        ]
    )
    batch = next(iter(DataLoader(Dataset([{"image": str(image)}], pre), batch_size=1)))
    with torch.inference_mode():
        batch["pred"] = sliding_window_inference(batch["image"], PATCH, 2, net, overlap=0.25, mode="gaussian")
    item = post(decollate_batch(batch)[0])
    output.parent.mkdir(parents=True, exist_ok=True)
    saver = T.SaveImage(output_ext=".nii.gz", output_dtype="uint8", resample=False, separate_folder=False)
    saver(item["pred"].to(torch.uint8), filename=str(output).removesuffix(".nii.gz"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--data", type=Path, required=True)
    t.add_argument(
        "--cases", required=True, help="comma-separated case names (organseg's fold-0 training set)"
    )
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--budget-s", type=float, required=True)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=2)
    i = sub.add_parser("infer")
    i.add_argument("--weights", type=Path, required=True)
    i.add_argument("--input", type=Path, required=True)
    i.add_argument("--output", type=Path, required=True)
    i.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.cmd == "train":
        train(a.data, a.cases.split(","), a.out, a.budget_s, a.lr, a.seed)
    else:
        infer(a.weights, a.input, a.output)


if __name__ == "__main__":
    main()
