"""Running cells: the plan of the matrix and the guests that run it, the engine that drives one
cell in a guest, the judge of its outcome, and the build of scenario objects."""
