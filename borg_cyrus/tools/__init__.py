"""Operator tools: doctor, demo."""
