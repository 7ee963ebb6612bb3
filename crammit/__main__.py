from crammit.cli import app

app()
