"""Reports from a run directory, without a VM: JUnit XML, Markdown, HTML and CSV."""
