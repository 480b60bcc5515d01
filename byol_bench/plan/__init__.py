"""Planning, no Ray: sweep files and tune files, validated and expanded into planned trials."""
