"""Billing: plans (rating), periods, statements, threshold periods, the meter."""
