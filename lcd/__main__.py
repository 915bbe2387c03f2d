import sys

from lcd.cli import main

sys.exit(main())
