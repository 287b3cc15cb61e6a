"""Event schema, identity stitching, feature builders and outcome labels."""
