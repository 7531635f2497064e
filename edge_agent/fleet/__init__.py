"""The operator's side: pushing updates to a fleet and serving their files."""
