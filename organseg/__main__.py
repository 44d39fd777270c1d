"""``python -m organseg`` (and ``torchrun -m organseg``): the command line."""

from organseg.cli import main

if __name__ == "__main__":
    main()
