"""vislab: a transfer-learning visual lab. Plain PyTorch library; the Streamlit pages sit on top of it."""

__version__ = "0.1.0"
