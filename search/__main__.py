from search.cli import entry

entry()
