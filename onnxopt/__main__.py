"""``python -m onnxopt`` runs the command-line interface."""

from onnxopt.cli.main import main

if __name__ == "__main__":
    main()
