"""Stress lab: replay crash days and synthetic shocks through the real engine, sweep parameters, report."""
