"""Every model: the six teachers, the three students, the contract they share and their sampling."""
