"""What a user asks for: scenario files (their shape, their loading), kitl verify's objects as
scenarios, bulk expectations and the selftests' annotations."""
