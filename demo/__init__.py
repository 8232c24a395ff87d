"""demo: coming in a later issue."""
