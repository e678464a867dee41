"""Demo-only steps the embedded demo's YAML asks for (never imported on the general path)."""
