"""The simulated DevServer fleet (see fleet.py)."""
