"""The engine of an audit: the stage table (``stages``), resumable runs (``pipeline``), the dry run (``plan``), sweeps (``sweep``) and the integrity check of a finished run (``verify``)."""
