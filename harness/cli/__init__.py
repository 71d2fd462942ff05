"""kitl's command line: argument parsing, the commands (run, verify, repro...) and progress
display."""
