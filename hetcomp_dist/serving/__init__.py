"""What users take away from a trained student: every user's top-K in raw ids (`recommend`) and a
serving bundle with a small query API (`bundle`)."""
