"""edgepack: Hugging Face checkpoint -> tested, device-fitted GGUF packages."""

__version__ = "0.1.0"
