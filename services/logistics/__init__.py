"""Logistics: the team and the flights of experts and team members."""
