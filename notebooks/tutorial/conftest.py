"""nbval (`make test`: ``pytest tests notebooks --nbval``) checks the executed solutions in
``solutions/``; the exercise versions here hold placeholders whose check cells fail by design,
so they are not collected."""

collect_ignore_glob = ["[0-9][0-9]_*.ipynb"]
