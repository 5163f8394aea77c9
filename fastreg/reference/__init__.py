"""Plain differentiable torch implementations of every op: the test oracle and the fallback."""
