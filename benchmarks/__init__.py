"""The quantization benchmark (`pocketrec bench`)."""
