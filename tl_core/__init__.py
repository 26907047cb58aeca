"""TL Studio engine: data, backbones, training, jobs, runs and prediction. No Streamlit here."""

__version__ = "0.1.0"
