"""Foundation layer: device, physics, schedules, experiment description, validators.

Imports no other ptyframe layer.
"""
