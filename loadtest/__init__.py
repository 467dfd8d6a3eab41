"""Locust users for load on the delivery path; built in a later issue."""
