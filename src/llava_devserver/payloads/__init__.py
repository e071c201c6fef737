"""Files that run inside the training container, not on the control node or the servers' own Python.

Each is copied in whole by its role (`'payloads.<name>' | llava.devserver.llava_module_path`) and runs on the
image's Python (3.9 on the Ascend images) with only the image's packages. `make lint` type-checks them on the
oldest Python mypy knows (3.10); tests/unit/test_server_python_compat.py checks their syntax against 3.9.
"""
