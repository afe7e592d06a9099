"""Label Studio adapter: the only package that will import ``label_studio_sdk``."""
