# CPU demo on ../shared/data/cifar100-mini (a few minutes on 2 cores):
#   python job_launcher.py --mode local --num_procs 2 --method suave --script_file suave/scripts/cpu_demo.sh
--config suave/configs/cpu_demo.yaml
