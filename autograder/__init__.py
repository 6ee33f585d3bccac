"""nbgrader configuration and the course's release and grading pipeline (maintainers' side)."""
