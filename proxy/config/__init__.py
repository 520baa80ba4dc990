"""Configuration in: files (YAML/JSON, or an ARM export/template) read, bounded and validated into ``proxy.model``.

Nothing past this package sees raw input: every problem is a ``ConfigError`` naming the file and field path.
"""
