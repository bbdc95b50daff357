output "bucket" {
  description = "The snapshot bucket."
  value       = aws_s3_bucket.snapshots.bucket
}

output "store_url" {
  description = "Store URL for the publisher: the agent's stores list or `qsync snapshot --store`."
  value       = local.store_url
}

output "cloudfront_url" {
  description = "HTTPS store URL for fetchers: `qsync restore --from` / QSYNC_FROM."
  value       = "https://${aws_cloudfront_distribution.snapshots.domain_name}${local.path_prefix}"
}

output "cloudfront_distribution_id" {
  description = "For the agent's cloudfront-distribution-id (pointer invalidations)."
  value       = aws_cloudfront_distribution.snapshots.id
}

output "publisher_policy_arn" {
  description = "IAM policy to attach to the publisher's role (write the store, invalidate the distribution)."
  value       = aws_iam_policy.publisher.arn
}

output "reader_policy_arn" {
  description = "IAM policy for fetchers that read s3:// directly instead of through CloudFront."
  value       = aws_iam_policy.reader.arn
}

output "download_alarm_arn" {
  description = "The CloudFront downloaded-bytes alarm."
  value       = aws_cloudwatch_metric_alarm.downloads.arn
}
