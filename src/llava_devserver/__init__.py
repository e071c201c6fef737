"""llava-devserver: LLaVA pretraining on fleets of Ascend DevServers, provisioned declaratively."""

__version__ = "0.1.0"
