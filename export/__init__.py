"""export: coming in a later issue."""
