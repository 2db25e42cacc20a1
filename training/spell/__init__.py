"""spell: the character-aware successor to the glyph model (issue 14). See docs/model-card-spell.md."""
