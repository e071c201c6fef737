# LLaVA's entry point adapted for Ascend NPUs (the AscendCloud patch): torch_npu and its CUDA-to-NPU
# translation are imported before anything touches torch.cuda. Off an NPU host (the simulated fleet)
# they are absent and training runs on the CPU.
import sys
from pathlib import Path

try:
    import torch_npu
    from torch_npu.contrib import transfer_to_npu  # noqa: F401
except ImportError:
    torch_npu = None

# Upstream relies on `pip install -e .`; the stand-in finds its package from the tree it sits in.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from llava.train.train import train

if __name__ == "__main__":
    train()
