import sys

try:
    from cos3d.cli import main
except KeyboardInterrupt:  # Ctrl-C during the first import: one line, as everywhere else
    print("cos3d: interrupted", file=sys.stderr)
    sys.exit(130)

main()
