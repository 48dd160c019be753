import sys

from robot_bridge.serve import main

sys.exit(main())
