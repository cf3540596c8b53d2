"""The teachers stage: every teacher trained by its own Ray actor (`actors`), early-stopped on validation
(`fit`), its trajectory exported as user-sharded top-K lists (`trajectory`, `runner`)."""
