"""The annual report page (page.py) and its charts (charts.py)."""
