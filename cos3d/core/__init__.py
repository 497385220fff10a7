"""Foundations every other package may import: errors, atomic writes, devices, rotations, path rules,
the dataclass-config/CLI machinery and prompt-phrase normal forms. Imports nothing else from cos3d."""
