# Upstream LLaVA's entry point: flash attention patched into LLaMA, then the training loop.
# The stand-in's attention is F.scaled_dot_product_attention already, so there is nothing to patch.
import sys
from pathlib import Path

# Upstream relies on `pip install -e .`; the stand-in finds its package from the tree it sits in.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from llava.train.train import train

if __name__ == "__main__":
    train()
