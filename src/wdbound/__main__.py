"""``python -m wdbound`` (and ``torchrun -m wdbound``): the command-line interface."""

from .cli import main

if __name__ == "__main__":
    main()
