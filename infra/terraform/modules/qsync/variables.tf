variable "name" {
  description = "Name prefix for every resource (bucket, distribution comment, policies, alarm)."
  type        = string
}

variable "bucket_name" {
  description = "Name of the snapshot bucket; defaults to \"<name>-snapshots\"."
  type        = string
  default     = null
}

variable "prefix" {
  description = "Key prefix of the qsync store inside the bucket, without leading or trailing slash (\"\" for the bucket root). The store URL is s3://<bucket>/<prefix>."
  type        = string
  default     = "qsync"
}

variable "requester_pays" {
  description = "Make downloads from the bucket itself requester-pays (readers pass --request-payer requester). Downloads through CloudFront are unaffected."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key for default bucket encryption; null uses SSE-S3 (AES-256). CloudFront reads SSE-KMS objects only if the key policy allows the distribution."
  type        = string
  default     = null
}

variable "noncurrent_version_days" {
  description = "Days a deleted or overwritten object version is kept (versioning protects against a bad publish or a wrong `qsync gc`; garbage collection frees space only after this)."
  type        = number
  default     = 14
}

variable "pointer_max_age" {
  description = "Seconds CloudFront may cache pointers and the catalog (keep equal to the agent's pointer-max-age)."
  type        = number
  default     = 60
}

variable "price_class" {
  description = "CloudFront price class."
  type        = string
  default     = "PriceClass_100"
}

variable "download_alarm_bytes" {
  description = "CloudWatch alarm when CloudFront serves more than this many bytes within one alarm period (1 TB by default: a download quota)."
  type        = number
  default     = 1000000000000
}

variable "download_alarm_period" {
  description = "Alarm period in seconds over which downloaded bytes are summed (86400 = one day; a multiple of 60)."
  type        = number
  default     = 86400
}

variable "alarm_actions" {
  description = "ARNs notified when the download alarm fires (for example an SNS topic)."
  type        = list(string)
  default     = []
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
