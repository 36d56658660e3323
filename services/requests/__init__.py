"""Requests: partner countries' and regional organisations' requests for assistance."""
