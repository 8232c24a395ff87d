"""serve: coming in a later issue."""
