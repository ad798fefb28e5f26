"""DSSGD on Flower: see examples/flower_app/README.md."""
