-- A dstune schema-1 database (dstune 0.1.0, before PDCA): one iteration, two trials.
-- Used by tests/test_store.py to prove that opening it migrates it without losing rows.
CREATE TABLE dstune_meta (
	"key" VARCHAR(64) NOT NULL, 
	value VARCHAR(256) NOT NULL, 
	PRIMARY KEY ("key")
);
CREATE TABLE dstune_workloads (
	id INTEGER NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	source_path TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (name)
);
CREATE TABLE dstune_environments (
	id INTEGER NOT NULL, 
	fingerprint VARCHAR(64) NOT NULL, 
	facts JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (fingerprint)
);
CREATE TABLE dstune_iterations (
	id INTEGER NOT NULL, 
	workload_id INTEGER NOT NULL, 
	environment_id INTEGER, 
	study_name VARCHAR(300) NOT NULL, 
	status VARCHAR(20) NOT NULL, 
	phase VARCHAR(20) NOT NULL, 
	started_at DATETIME NOT NULL, 
	ended_at DATETIME, 
	host VARCHAR(200), 
	options JSON NOT NULL, 
	context JSON NOT NULL, 
	knobs JSON NOT NULL, 
	default_config JSON NOT NULL, 
	checklist_config JSON NOT NULL, 
	memory_budget_bytes INTEGER, 
	chosen_trial_id INTEGER, 
	chosen_config JSON, 
	error TEXT, 
	PRIMARY KEY (id), 
	FOREIGN KEY(workload_id) REFERENCES dstune_workloads (id), 
	FOREIGN KEY(environment_id) REFERENCES dstune_environments (id)
);
CREATE TABLE dstune_trials (
	id INTEGER NOT NULL, 
	iteration_id INTEGER NOT NULL, 
	number INTEGER, 
	seed_kind VARCHAR(20) NOT NULL, 
	config JSON NOT NULL, 
	status VARCHAR(20) NOT NULL, 
	started_at DATETIME NOT NULL, 
	ended_at DATETIME, 
	duration_s FLOAT, 
	samples_per_s FLOAT, 
	step_time_median_s FLOAT, 
	step_time_cv FLOAT, 
	peak_memory_bytes INTEGER, 
	peak_allocated INTEGER, 
	peak_reserved INTEGER, 
	first_step_s FLOAT, 
	micro_batch INTEGER, 
	accumulation INTEGER, 
	energy_per_sample_j FLOAT, 
	gpu_util_mean FLOAT, 
	latency_p99_s FLOAT, 
	metrics JSON NOT NULL, 
	error TEXT, 
	exit_code INTEGER, 
	signal VARCHAR(20), 
	stderr_tail TEXT, 
	host VARCHAR(200), 
	gpu VARCHAR(50), 
	PRIMARY KEY (id), 
	FOREIGN KEY(iteration_id) REFERENCES dstune_iterations (id)
);
INSERT INTO dstune_meta (key,value) VALUES ('schema_version','1');
INSERT INTO dstune_workloads (id,name,source_path,created_at) VALUES (1,'observe','/work/main/tests/workloads/observe.py','2026-11-23 10:41:37.216605');
INSERT INTO dstune_environments (id,fingerprint,facts,created_at) VALUES (1,'ef6649a7a098959f','{"host": "vm", "python": "3.11.7", "platform": "Linux-6.18.44-fc-v782-x86_64-with-glibc2.36", "torch": "2.13.0+cpu", "cuda": null, "cudnn": null, "driver": null, "gpu": null, "gpu_count": 0, "dstune": "0.1.0", "plugins": {"batch_size": "0.1.0", "precision": "0.1.0", "checkpointing": "0.1.0", "threads": "0.1.0", "cudnn": "0.1.0"}, "workload_source": "0c4eff0ea89709d1", "executable": "/work/main/.venv/bin/python"}','2026-11-23 10:41:37.219537');
INSERT INTO dstune_iterations (id,workload_id,environment_id,study_name,status,phase,started_at,ended_at,host,options,context,knobs,default_config,checklist_config,memory_budget_bytes,chosen_trial_id,chosen_config,error) VALUES (1,1,1,'observe-it1','completed','done','2026-11-23 10:41:37.221893','2026-11-23 10:41:41.246366','vm','{"trials": 2, "budget_s": 60.0, "seed": 0, "trial_timeout_s": 600.0, "disabled_plugins": ["compile"]}','{"bf16_supported": true, "capability": null, "cpu_count": 2, "default_batch_size": 8, "device": "cpu", "device_memory": 25276063744, "device_name": "cpu", "facts": {"checkpoint.blocks": 3, "checkpoint.hf": false}, "global_batch_size": null, "has_dataset": false, "mode": "train", "model_class": "dstune_workload_4aa18319546c.Net", "param_count": 4356, "workload": "observe"}','[{"name": "intra_op_threads", "plugin": "threads", "choices": [null, 1, 2], "default": null, "checklist": null}, {"name": "interop_threads", "plugin": "threads", "choices": [null, 1, 2], "default": null, "checklist": null}, {"name": "activation_checkpointing", "plugin": "checkpointing", "choices": [false, true], "default": false, "checklist": false}, {"name": "precision", "plugin": "precision", "choices": ["fp32", "bf16"], "default": "fp32", "checklist": "bf16"}, {"name": "batch_size", "plugin": "batch_size", "choices": [2, 4, 8, 16, 32, 64, 128], "default": 8, "checklist": 8}]','{"intra_op_threads": null, "interop_threads": null, "activation_checkpointing": false, "precision": "fp32", "batch_size": 8}','{"intra_op_threads": null, "interop_threads": null, "activation_checkpointing": false, "precision": "bf16", "batch_size": 8}',22748457369,2,'{"intra_op_threads": null, "interop_threads": null, "activation_checkpointing": false, "precision": "bf16", "batch_size": 8}',NULL);
INSERT INTO dstune_trials (id,iteration_id,number,seed_kind,config,status,started_at,ended_at,duration_s,samples_per_s,step_time_median_s,step_time_cv,peak_memory_bytes,peak_allocated,peak_reserved,first_step_s,micro_batch,accumulation,energy_per_sample_j,gpu_util_mean,latency_p99_s,metrics,error,exit_code,signal,stderr_tail,host,gpu) VALUES (1,1,0,'default','{"intra_op_threads": null, "interop_threads": null, "activation_checkpointing": false, "precision": "fp32", "batch_size": 8}','ok','2026-11-23 10:41:39.408988','2026-11-23 10:41:39.404503',1.818943570000556,8252.25333254605,0.0009694321875031164,0.07181975793092236,266674176,NULL,NULL,0.005750753000029363,8,1,NULL,NULL,NULL,'{"samples_per_s": 8252.25333254605, "step_time_median_s": 0.0009694321875031164, "step_time_cv": 0.07181975793092236, "window_step_times_s": [0.0010080845000004501, 0.0009633573593674782, 0.0008157205312500082, 0.0009694321875031164, 0.000985342015624724], "steps_per_window": 64, "windows": 5, "first_step_s": 0.005750753000029363, "warmup_steps": 7, "warmup_s": 0.011133236000205216, "timed_wall_s": 0.3035170550001567, "micro_batch": 8, "accumulation": 1, "samples_per_step": 8, "peak_rss": 266674176, "peak_memory_bytes": 266674176}',NULL,0,NULL,NULL,'vm',NULL);
INSERT INTO dstune_trials (id,iteration_id,number,seed_kind,config,status,started_at,ended_at,duration_s,samples_per_s,step_time_median_s,step_time_cv,peak_memory_bytes,peak_allocated,peak_reserved,first_step_s,micro_batch,accumulation,energy_per_sample_j,gpu_util_mean,latency_p99_s,metrics,error,exit_code,signal,stderr_tail,host,gpu) VALUES (2,1,1,'checklist','{"intra_op_threads": null, "interop_threads": null, "activation_checkpointing": false, "precision": "bf16", "batch_size": 8}','ok','2026-11-23 10:41:41.210375','2026-11-23 10:41:41.209655',1.7383406090002609,9613.423271657402,0.0008321697457747285,0.04244205209702869,266354688,NULL,NULL,0.00640863700027694,8,1,NULL,NULL,NULL,'{"samples_per_s": 9613.423271657402, "step_time_median_s": 0.0008321697457747285, "step_time_cv": 0.04244205209702869, "window_step_times_s": [0.0008316222881256766, 0.0008321697457747285, 0.0009251821186546171, 0.0008310146949027558, 0.0008521212372924912], "steps_per_window": 59, "windows": 5, "first_step_s": 0.00640863700027694, "warmup_steps": 11, "warmup_s": 0.01693137799975375, "timed_wall_s": 0.25208395100071357, "micro_batch": 8, "accumulation": 1, "samples_per_step": 8, "peak_rss": 266354688, "peak_memory_bytes": 266354688}',NULL,0,NULL,NULL,'vm',NULL);
CREATE INDEX ix_dstune_iterations_workload_id ON dstune_iterations (workload_id);
CREATE INDEX ix_dstune_trials_status ON dstune_trials (status);
CREATE INDEX ix_dstune_trials_iteration_id ON dstune_trials (iteration_id);
