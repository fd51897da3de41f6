# Daino CPU demo on ../shared/data/cifar100-mini:
#   python job_launcher.py --mode local --num_procs 2 --method daino --script_file daino/scripts/cpu_demo.sh
--config daino/configs/cpu_demo.yaml
